"""HL7 v2 over MLLP: a listener that acknowledges a message only once it is stored (issue 21).

``ack`` builds acknowledgments (pure); ``receive`` stores one message through the site's HL7 v2
mapping and gives its ACK; ``listener`` is the asyncio TCP/TLS server (I/O).
"""
