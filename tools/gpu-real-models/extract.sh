#!/bin/bash
# extract.sh: cut the models out of /tmp/ks by offset and verify their sha256.
mkdir -p /tmp/kh/models
ex() { # name offset size sha
  f=/tmp/kh/models/$1.gguf
  [ -f $f ] && [ "$(stat -c %s $f)" = "$3" ] && return
  tail -c +$(($2 + 1)) /tmp/ks | head -c $3 > $f
  echo "$4  $f" | sha256sum -c - || rm -f $f
}
s=$(stat -c %s /tmp/ks)
[ $s -ge 253113024 ] && ex gemma3-270m 0 253113024 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
[ $s -ge 744513088 ] && ex qwen2.5-coder-0.5b 253113024 491400064 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
[ $s -ge 1861833856 ] && ex qwen2.5-coder-1.5b 744513088 1117320768 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
ls -la /tmp/kh/models
