"""QuestDB: table DDL, ILP row encoding, the flush policy and the writer thread of a buffer actor."""
