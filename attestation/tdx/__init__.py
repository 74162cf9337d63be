"""Intel TDX quote verification, pure and offline.

* ``parse_quote(data) -> TdxQuote``: quote v4 / v5 (TDX 1.0 and 1.5 bodies), bounds-checked.
* ``TdxCollateral``: TCB infos, TD_QE identities, CRLs and certificates, signatures verified once.
* ``verify_quote(quote, trust=, collateral=, now=) -> Claims``: full verification and TCB status.
* ``verify_quote_signatures(quote, trust=, now=) -> Claims``: evidence and PCK chain only (status Unknown).
"""

from attestation.tdx.collateral import TdxCollateral, merge, parse_collateral_bundle
from attestation.tdx.quote import QeReport, TdxQuote, parse_quote
from attestation.tdx.verify import verify_quote, verify_quote_signatures

__all__ = [
    "QeReport",
    "TdxCollateral",
    "TdxQuote",
    "merge",
    "parse_collateral_bundle",
    "parse_quote",
    "verify_quote",
    "verify_quote_signatures",
]
