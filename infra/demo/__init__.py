"""`spacetime demo`: every stage end to end on the procedural `shapes` dataset, with its scorer."""
