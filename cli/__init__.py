"""The `marketfeed` command line: run, demo, health, check-config, verify, sim, top."""
