# Rewrites a CUDA source for the emulator (run.sh): kernel launches
# name<<<cfg>>>(args); become mb_emu_cfg(cfg) + mb_emu_run(lambda), dynamic
# shared memory a pointer to the emulated block's, <mma.h> is dropped (emu.h
# emulates WMMA), dlopen/dlsym/dlclose become the emulator's (which hand out
# its cuBLAS). Usage: gen.py src dst
import re, sys, os
src, dst = sys.argv[1], sys.argv[2]
s = open(src).read()
s = s.replace('#include <mma.h>', '')
s = re.sub(r'\bdl(open|sym|close)\(', r'mb_emu_dl\1(', s)
s = re.sub(r'extern __shared__ (\w+) (\w+)\[\];', r"\1 *\2 = (\1 *)mb_emu_dyn_smem();", s)
out = []
i = 0
while True:
    j = s.find('<<<', i)
    if j < 0:
        out.append(s[i:]); break
    # name: back over a template argument list and an identifier
    k = j
    while s[k-1].isspace(): k -= 1
    name_end = k
    if s[k-1] == '>':
        depth = 0
        k -= 1
        while True:
            if s[k] == '>': depth += 1
            elif s[k] == '<':
                depth -= 1
                if depth == 0: break
            k -= 1
    while k > 0 and (s[k-1].isalnum() or s[k-1] == '_'): k -= 1
    name = s[k:name_end]
    e = s.find('>>>', j)
    cfg = s[j+3:e]
    p = e + 3
    while s[p].isspace(): p += 1
    assert s[p] == '(', s[p:p+40]
    depth = 0; q = p
    while True:
        if s[q] == '(': depth += 1
        elif s[q] == ')':
            depth -= 1
            if depth == 0: break
        q += 1
    args = s[p+1:q]
    assert s[q+1] == ';'
    out.append(s[i:k])
    out.append('{ mb_emu_cfg(%s); mb_emu_run([&]() { %s(%s); }); }' % (cfg, name, args))
    i = q + 2
os.makedirs(os.path.dirname(dst), exist_ok=True)
open(dst, 'w').write(''.join(out))
