"""The offline bundle: build (connected side, ``build``), verify and install (``installer``, stdlib only,
shipped in the bundle as ``install.py``), release keys (``keys``)."""
