"""Data-sharing agreements as code: model, YAML loader and validation."""

from agreements.loader import AgreementError, load_dir, load_file, recipients_by_type
from agreements.model import Agreement, ConsentMode, IdentifierTreatment, Purpose, Status

__all__ = [
    "Agreement",
    "AgreementError",
    "ConsentMode",
    "IdentifierTreatment",
    "Purpose",
    "Status",
    "load_dir",
    "load_file",
    "recipients_by_type",
]
