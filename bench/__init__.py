"""The benchmark: marketfeed against this machine's own ceilings (`python -m bench`, README "Performance")."""
