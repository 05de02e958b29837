"""cd4ml's read-only web view of the run ledger: runs, a run's timeline and lineage, models, waiting approvals.

Not part of the function archive (functions/): it reads Firestore like ``cd4ml status`` does, and writes nothing.
"""
