"""The C part of the build; pyproject.toml holds everything else.

ledger/_binary_rows.c writes the ledger's binary COPY rows (ledger/entry.py binary_rows).
It is optional: where it cannot be compiled (no C compiler, no OpenSSL headers) the
install goes on and the ledger writes the same rows in Python, more slowly.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ledger._binary_rows",
            sources=["ledger/_binary_rows.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
