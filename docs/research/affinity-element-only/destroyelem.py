"""NFT_MSG_DESTROYSETELEM on ip svc affinity for keys 'saddr daddr proto port' (argv)."""
import socket, struct, sys, os, ipaddress
def attr(t, p): l = 4 + len(p); return struct.pack("=HH", l, t) + p + b"\0" * ((4 - l % 4) % 4)
nest = lambda t, items: attr(t | 0x8000, b"".join(items))
s = lambda t, v: attr(t, v.encode() + b"\0")
def key(sa, da, proto, port):
    return ipaddress.ip_address(sa).packed + ipaddress.ip_address(da).packed + struct.pack("B3x", proto) + struct.pack(">H2x", port)
elems = [nest(1, [nest(1, [attr(1, key(*a.split()[:2], int(a.split()[2]), int(a.split()[3])))])]) for a in sys.argv[1:]]
body = s(1, "svc") + s(2, "affinity") + nest(3, elems)
def msg(t, flags, seq, b, f=2, res=0):
    b = struct.pack("=BBH", f, 0, socket.htons(res)) + b; return struct.pack("=IHHII", 16 + len(b), t, flags, seq, 0) + b
batch = msg(16, 1, 1, b"", 0, 10) + msg((10 << 8) | 30, 1 | 4, 2, body) + msg(17, 1, 3, b"", 0, 10)
sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12); sk.bind((0, 0)); sk.send(batch); sk.settimeout(2)
r = sk.recv(65536); ln, t, fl, seq, pid = struct.unpack_from("=IHHII", r, 0); err = struct.unpack_from("=i", r, 16)[0]
print("DESTROYSETELEM:", os.strerror(-err) if err else "OK (ack)")
