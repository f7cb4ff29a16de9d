"""Configuration: schema, loader (TOML file + MARKETFEED_* environment overrides), shipped files."""
