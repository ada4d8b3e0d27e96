"""Who is calling: SigV4-signed requests of SDK clients (``sigv4.py``); API keys are read in router/features.py."""
