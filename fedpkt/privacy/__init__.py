"""What protects a persona: data that stays on its client, and proof that it did.

- ``vault``: each phase-2 client's encrypted store for its personalized prefix (AES-256-GCM,
  key derived with scrypt from a secret that never leaves the client).
- ``audit``: the egress audit (a package, one module per job) checks what clients sent against
  the privacy contract.

Submodules are imported explicitly (``from fedpkt.privacy.vault import Vault``) so that using
one does not load the other's dependencies.
"""
