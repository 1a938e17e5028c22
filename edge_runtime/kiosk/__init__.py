"""The kiosk dialogue loop: voice, camera text and typed text in; streamed, spoken answers out."""
