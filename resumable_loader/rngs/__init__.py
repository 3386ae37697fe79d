"""Per-sample randomness: each sample's key and the process-global generators it reseeds."""
