"""The store: the catalog (every state change), the spool (every file), group commit, the spool check,
retention, the schema migrations. The only interface between the stages."""
