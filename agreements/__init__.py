"""Data-sharing agreements as code: model, YAML loader and validation.

``agreements.explain`` (why an event would or would not be shared) is imported
from its module: it uses ``accord.sharing``, which itself imports this package.
"""

from agreements.conditions import Condition, Op, holds
from agreements.loader import (
    AgreementError,
    lapsed,
    load_dir,
    load_file,
    recipients_by_type,
    schema_problems,
    validate_dir,
)
from agreements.model import (
    Agreement,
    ConsentMode,
    IdentifierTreatment,
    LawfulBasis,
    Party,
    PartyRole,
    Purpose,
    Status,
    Transparency,
    TransparencyMode,
)

__all__ = [
    "Agreement",
    "AgreementError",
    "Condition",
    "ConsentMode",
    "IdentifierTreatment",
    "LawfulBasis",
    "Op",
    "Party",
    "PartyRole",
    "Purpose",
    "Status",
    "Transparency",
    "TransparencyMode",
    "holds",
    "lapsed",
    "load_dir",
    "load_file",
    "recipients_by_type",
    "schema_problems",
    "validate_dir",
]
