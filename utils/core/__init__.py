"""What every stage shares and none owns: atomic run I/O, folder locks, stop requests,
quiet start-up, image I/O, record packs and the one error base (errors.IcyfaceError)."""
