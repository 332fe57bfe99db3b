"""Text on its way to a voice: making replies speakable and splitting them into phrases."""
