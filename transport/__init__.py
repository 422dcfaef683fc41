"""The trio QUIC shell both ends use: aioquic driven sans-IO, one UDP socket per endpoint."""
