"""The Cryptopass client library and the ``cryptopass`` command: what apps mirror."""
