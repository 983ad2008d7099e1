"""One attempt of a request on the wire: transports, the lean HTTP/1.1 client, reply bodies, the endpoint."""
