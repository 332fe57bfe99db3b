"""Audio in and out: decode/encode/resample (`io`), the speech gate (`gate`) and voice activity for turn detection (`vad`)."""
