// The cheapest possible XDP program: the baseline the classifier's cost is
// measured against in bench/ (both through BPF_PROG_TEST_RUN, same frames).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
