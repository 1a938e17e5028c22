"""Camera OCR: frames from OpenCV sources, preprocessing for Tesseract, words with boxes and confidences."""
