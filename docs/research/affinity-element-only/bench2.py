import subprocess, statistics, re
def commit_ms(text, echo=False):
    open("/tmp/affinity-research/b.nft", "w").write(text)
    r = subprocess.run(["ip", "netns", "exec", "t2", "strace", "-T", "-e", "trace=sendmsg", "nft"] + (["-e", "-a"] if echo else []) + ["-f", "/tmp/affinity-research/b.nft"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = [float(x) for x in re.findall(r"^sendmsg\(.*<([0-9.]+)>$", r.stderr, re.M)]
    return t[-1] * 1000, r.stdout
res = {"endpoint change as elements (2 elem add)": [], "elements delete": [], "add 1 rule to nat chain svc-17": [], "delete that rule": []}
for it in range(25):
    ks = list(res)
    res[ks[0]].append(commit_ms("add element ip big endpoints-3 { 10.99.0.1 . tcp . 80 . 0 : 10.244.99.1 . 8080 }\nadd element ip big affinity-live { 10.99.0.1 . tcp . 80 . 10.244.99.1 . 8080 }\n")[0])
    res[ks[1]].append(commit_ms("delete element ip big endpoints-3 { 10.99.0.1 . tcp . 80 . 0 }\ndelete element ip big affinity-live { 10.99.0.1 . tcp . 80 . 10.244.99.1 . 8080 }\n")[0])
    d, out = commit_ms("add rule ip big svc-17 update @aff-7 { ip saddr : 10.244.99.1 . 8080 } meta l4proto tcp dnat to 10.244.99.1:8080\n", echo=True); res[ks[2]].append(d)
    h = re.search(r"# handle (\d+)", out).group(1)
    res[ks[3]].append(commit_ms(f"delete rule ip big svc-17 handle {h}\n")[0])
for k, v in res.items():
    v.sort(); print(f"{k:42s} kernel batch (sendmsg) median {statistics.median(v):7.3f} ms  p90 {v[int(len(v)*0.9)]:7.3f}  max {v[-1]:7.3f}")
