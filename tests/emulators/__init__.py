"""Local emulators of the providers' HTTP APIs and of upstream apps, for the tests."""
