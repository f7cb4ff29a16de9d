"""QuestDB: the table descriptors (DDL, dedup keys, ILP encoding, views, flush policy), creating them, and the
writer thread of a buffer actor with its spool and dead letters."""
