"""Video input: dataset listings (formats), frame decoding (decode), mp4 writing and sample clips."""
