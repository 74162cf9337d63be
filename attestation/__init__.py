"""Evidence formats and verification: SEV-SNP reports, TDX quotes, collateral, report-data binding.

Pure: functions take bytes, a trust store, collateral and ``now``; they never do I/O or read the clock
(``attestation.store`` is the one module that touches files).
"""
