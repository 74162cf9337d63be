"""Training provenance, the pure core: the in-toto statement of a sealed model output (built from ledger
entries and their Merkle proofs), its DSSE envelope, and the offline verifier. No I/O, no clock, no gRPC,
SQL or OpenBao: the issuing use case (``kms.usecases.provenance_issue``) gathers the inputs and signs.
Format and checks: docs/provenance.md."""
