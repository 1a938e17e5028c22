"""Voice kiosk module: audio sources, speech recognition (Vosk, pocketsphinx), speech synthesis and playback."""
