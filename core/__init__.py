"""What every package of adabldm imports and nothing of theirs: network specs, atomic I/O,
precision, image metrics. It imports no other package of the project."""
