"""Launchers. bin/questdb is also package data (marketfeed.bin): the demo runs it from an installed wheel."""
