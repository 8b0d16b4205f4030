"""Small local stand-ins for the real models and data, for the offline demo and the tests."""
