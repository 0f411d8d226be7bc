"""Audio: frames, G.711, resampling, jitter buffers, mixer, level/VAD, capture and playback."""
