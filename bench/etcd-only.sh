# Sourced by the benchmarks: writes pangaea.yaml for cluster NAME with node network CIDR
# into DIR, with Debian's etcd 3.4 delivered as the only artifact (no Kubernetes binaries
# can be fetched here) — the configuration every benchmark against the floor uses.
# Usage: etcd_only_config DIR NAME CIDR
etcd_only_config() {
  cat > "$1/pangaea.yaml" <<YAML
name: $2
network:
  nodes: $3
artifacts:
  - name: etcd
    url: file:///usr/bin/etcd
    digest: sha256:$(sha256sum /usr/bin/etcd | cut -d' ' -f1)
    members: {}
  - {name: kube-apiserver, disabled: true}
  - {name: kube-controller-manager, disabled: true}
  - {name: kube-scheduler, disabled: true}
  - {name: kubelet, disabled: true}
  - {name: kube-proxy, disabled: true}
  - {name: kubectl, disabled: true}
  - {name: containerd, disabled: true}
  - {name: runc, disabled: true}
  - {name: cni-plugins, disabled: true}
  - {name: crictl, disabled: true}
YAML
}
