"""Storage backends behind one protocol (``protocol.py``): SQLite, embedded and owned by one
process, and PostgreSQL, shared by several. No SQL lives outside this package."""
