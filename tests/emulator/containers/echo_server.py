"""A small HTTP server for the port proxy's tests, run with the image's ``python3``:
``GET /events?n=N`` streams N NDJSON lines, each after the first waiting for one
``POST /next`` (so a test sees a line arrive before the next exists); ``POST /count``
answers how many body bytes it read (chunked or not); ``GET /hangup`` closes the
connection without answering; ``GET /cookies`` sets two cookies; any other ``GET`` answers what it
saw (path, ``$NAME``, ``Authorization``, the emulator's header)."""

import http.server
import json
import os
import socket
import sys
import threading

go = threading.Semaphore(0)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/hangup":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path == "/cookies":
            self.send_response(200)
            self.send_header("set-cookie", "a=1")
            self.send_header("set-cookie", "b=2")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if self.path.startswith("/events"):
            n = int(self.path.partition("n=")[2])
            self.send_response(200)
            self.send_header("content-type", "application/x-ndjson")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(n):
                if i and not go.acquire(timeout=30):
                    break
                line = (json.dumps({"i": i}) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        seen = {
            "path": self.path,
            "name": os.environ.get("NAME"),
            "authorization": self.headers.get("authorization"),
            "emulator": self.headers.get("x-kit-emulator-authorization"),
        }
        self._json(seen)

    def do_POST(self) -> None:
        if self.path == "/next":
            go.release()
            self._json({})
            return
        total = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            for _ in range(1_000_000):
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            total = len(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self._json({"bytes": total})


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
