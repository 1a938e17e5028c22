"""The Wyoming protocol server: Home Assistant's speech-to-text, text-to-speech and conversation agent."""
