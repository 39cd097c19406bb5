"""Append one nf_tables rule given as raw expressions (bypasses nft's linearizer).
usage: nlrule.py FAMILY TABLE CHAIN OP   where OP is update|delete (IPv6 record rule)."""
import socket, struct, sys, os
NETLINK_NETFILTER, SUBSYS = 12, 10
NFT_MSG_NEWRULE, BATCH_BEGIN, BATCH_END = 6, 16, 17
F_REQ, F_ACK, F_CREATE, F_APPEND = 1, 4, 0x400, 0x800
def attr(t, payload): 
    l = 4 + len(payload); return struct.pack("=HH", l, t) + payload + b"\0" * ((4 - l % 4) % 4)
nest = lambda t, items: attr(t | 0x8000, b"".join(items))
u32 = lambda t, v: attr(t, struct.pack(">I", v))
u64 = lambda t, v: attr(t, struct.pack(">Q", v))
u8 = lambda t, v: attr(t, struct.pack("B", v))
s = lambda t, v: attr(t, v.encode() + b"\0")
def expr(name, *a): return nest(1, [s(1, name), nest(2, list(a))])   # NFTA_LIST_ELEM{NAME, DATA}
R = lambda slot: 8 + slot                                               # NFT_REG32_00 + slot
def payload(base, off, ln, slot): return expr("payload", u32(1, R(slot)), u32(2, base), u32(3, off), u32(4, ln))
def ct(key, slot, dirn=0): return expr("ct", u32(1, R(slot)), u32(2, key), u8(3, dirn))
def meta(key, slot): return expr("meta", u32(1, R(slot)), u32(2, key))
def lookup(setname, slot, inv=False): return expr("lookup", s(1, setname), u32(2, R(slot)), *( [u32(5, 1)] if inv else []))
def dynset(setname, op, kslot, dslot, timeout_ms=0):
    a = [s(1, setname), u32(3, op), u32(4, R(kslot)), u32(5, R(dslot))]
    if timeout_ms: a.append(u64(6, timeout_ms))
    return expr("dynset", *a)
counter = expr("counter")
drop = expr("immediate", u32(1, 0), nest(2, [nest(2, [u32(1, 0)])]))   # dreg verdict, NFTA_DATA_VERDICT{CODE=NF_DROP}
NET, TH = 1, 2
CT_DST_IP6, CT_PROTO_DST, META_L4PROTO = 22, 12, 16
fam, table, chain, op, gate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
timeout_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 0
# key: slots 0-3 ip6 saddr | 4-7 ct original ip6 daddr | 8 l4proto | 9 ct original proto-dst ; data: 10-13 ip6 daddr | 14 th dport
key = [payload(NET, 8, 16, 0), ct(CT_DST_IP6, 4), meta(META_L4PROTO, 8), ct(CT_PROTO_DST, 9)]
data = [payload(NET, 24, 16, 10), payload(TH, 2, 2, 14)]
exprs = key + [lookup(gate, 4)] + data
if op == "update":
    exprs += [dynset("affinity", 1, 0, 10, timeout_ms)]
else:  # stale: (service key . endpoint) not live -> forget the record, drop this first packet
    live = [ct(CT_DST_IP6, 0, 0), meta(META_L4PROTO, 4), ct(CT_PROTO_DST, 5), payload(NET, 24, 16, 6), payload(TH, 2, 2, 10)]
    exprs = key + [lookup(gate, 4)] + live + [lookup("affinity-live", 0, inv=True)] + key + data + [dynset("affinity", 2, 0, 10), counter, drop]
famnum = {"ip": 2, "ip6": 10, "inet": 1}[fam]
def msg(t, flags, seq, body, f=famnum, res=0):
    b = struct.pack("=BBH", f, 0, socket.htons(res)) + body
    return struct.pack("=IHHII", 16 + len(b), t, flags, seq, 0) + b
rule = s(1, table) + s(2, chain) + nest(4, exprs)
batch = msg(BATCH_BEGIN, F_REQ, 1, b"", 0, SUBSYS) + msg((SUBSYS << 8) | NFT_MSG_NEWRULE, F_REQ | F_ACK | F_CREATE | F_APPEND, 2, rule) + msg(BATCH_END, F_REQ, 3, b"", 0, SUBSYS)
sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER); sk.bind((0, 0)); sk.send(batch)
sk.settimeout(2)
try:
    while True:
        r = sk.recv(65536); off = 0
        while off < len(r):
            ln, t, fl, seq, pid = struct.unpack_from("=IHHII", r, off)
            if t == 2:
                err = struct.unpack_from("=i", r, off + 16)[0]
                print("seq", seq, "error" if err else "ack", os.strerror(-err) if err else "OK")
                if seq == 2: sys.exit(1 if err else 0)
            off += (ln + 3) & ~3
except socket.timeout:
    print("no ack"); sys.exit(2)
