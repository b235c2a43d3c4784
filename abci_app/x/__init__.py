"""State-machine modules, each shaped types / keeper / handler / genesis."""
