"""The fault suite (issue 10, item 1): `make faults` runs it in full, `make test` in its short form."""
