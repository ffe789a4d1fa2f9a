// SPDX-License-Identifier: GPL-2.0
/*
 * The C half of the VNI kernel module: what the kernel's Rust does not
 * offer a network driver (7.3 has no net_device, NAPI or skb abstractions,
 * and its PCI device hides the raw pci_dev a write-back mapping of BAR2
 * needs). Everything here is glue: it registers the PCI driver, owns the
 * net_device, the NAPI context, the interrupts, the housekeeping work and
 * the kick timer, and wraps the kernel's inline helpers. Every decision
 * about frames and the region is made by the Rust half (vni_main.rs and
 * the protocol core it includes), which these callbacks call, and which
 * calls back the vni_* helpers below.
 *
 * Contexts: ndo_start_xmit runs with bottom halves off, the NAPI poll and
 * the kick timer in softirq, the housekeeping work in process context, the
 * interrupt handlers in hard irq (they only schedule). The Rust half
 * serializes its state with vni_lock() (a spinlock taken with bottom
 * halves off) and never sleeps under it.
 */

#include <linux/etherdevice.h>
#include <linux/ethtool.h>
#include <linux/hex.h>
#include <linux/hrtimer.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/pci.h>
#include <linux/skbuff.h>
#include <linux/virtio_net.h>
#include <linux/workqueue.h>

#include "vni.h"

/* ivshmem BAR0 registers (QEMU's ivshmem spec). */
#define IVSHMEM_IVPOSITION 8
#define IVSHMEM_DOORBELL 12
#define VNI_BAR_REGS 0
#define VNI_BAR_SHM 2
#define VNI_RX_VECTOR 0
#define VNI_CONTROL_VECTOR 1
#define VNI_VECTORS 2

static int node = -1;
module_param(node, int, 0444);
MODULE_PARM_DESC(node, "This node's id in the shared region (required)");
static char *mac;
module_param(mac, charp, 0444);
MODULE_PARM_DESC(mac, "The interface's MAC address (required), e.g. 02:00:00:00:00:01");
static unsigned int mtu = 1500;
module_param(mtu, uint, 0444);
MODULE_PARM_DESC(mtu, "The interface's MTU (default 1500)");
static char ifname[IFNAMSIZ] = "vni0";
module_param_string(ifname, ifname, sizeof(ifname), 0444);
MODULE_PARM_DESC(ifname, "The interface's name (default vni0)");
static char *notification = "interrupt";
module_param(notification, charp, 0444);
MODULE_PARM_DESC(notification, "How frames are noticed: interrupt (default) or polling");
static unsigned int busy_poll_us;
module_param(busy_poll_us, uint, 0444);
MODULE_PARM_DESC(busy_poll_us, "How long NAPI keeps polling after the last frame, microseconds (default 0)");

struct vni_priv {
	struct net_device *dev;
	struct pci_dev *pdev;
	void __iomem *regs;
	void *shm;
	/* Serializes the Rust half's state (vni_lock / vni_unlock). */
	spinlock_t lock;
	struct napi_struct napi;
	struct delayed_work housekeeping;
	struct hrtimer kick;
	/* Set while the device goes away: no new work, no new kicks. */
	bool removing;
	/* The Rust half's state (vni_rs_new). */
	void *rs;
};

/* Helpers the Rust half calls (declared in vni.h). */

void vni_lock(struct vni_priv *p)
{
	spin_lock_bh(&p->lock);
}

void vni_unlock(struct vni_priv *p)
{
	spin_unlock_bh(&p->lock);
}

void vni_ring(struct vni_priv *p, u16 peer, u16 vector)
{
	iowrite32(((u32)peer << 16) | vector, p->regs + IVSHMEM_DOORBELL);
}

void vni_carrier(struct vni_priv *p, bool on)
{
	if (on)
		netif_carrier_on(p->dev);
	else
		netif_carrier_off(p->dev);
}

bool vni_is_up(struct vni_priv *p)
{
	return netif_running(p->dev);
}

void vni_queue_stop(struct vni_priv *p)
{
	netif_stop_queue(p->dev);
}

void vni_kick_after(struct vni_priv *p, u32 ns)
{
	if (!READ_ONCE(p->removing) && !hrtimer_active(&p->kick))
		hrtimer_start(&p->kick, ns_to_ktime(ns), HRTIMER_MODE_REL_SOFT);
}

void vni_housekeeping_soon(struct vni_priv *p)
{
	if (!READ_ONCE(p->removing))
		mod_delayed_work(system_dfl_wq, &p->housekeeping, 0);
}

bool vni_napi_complete(struct vni_priv *p, int done)
{
	return napi_complete_done(&p->napi, done);
}

void vni_napi_schedule(struct vni_priv *p)
{
	napi_schedule(&p->napi);
}

bool vni_napi_scheduled(struct vni_priv *p)
{
	return test_bit(NAPI_STATE_SCHED, &p->napi.state);
}

bool vni_xmit_more(void)
{
	return netdev_xmit_more();
}

u32 vni_skb_len(const struct sk_buff *skb)
{
	return skb->len;
}

int vni_skb_vnet_hdr(const struct sk_buff *skb, u8 *hdr)
{
	struct virtio_net_hdr h;
	int err = virtio_net_hdr_from_skb(skb, &h, true, false, 0);

	if (err)
		return err;
	BUILD_BUG_ON(sizeof(h) != VNI_VNET_HDR_LEN);
	memcpy(hdr, &h, sizeof(h));
	return 0;
}

int vni_skb_copy(const struct sk_buff *skb, u32 offset, void *to, u32 len)
{
	return skb_copy_bits(skb, offset, to, len);
}

void vni_skb_consume(struct sk_buff *skb)
{
	dev_consume_skb_any(skb);
}

void vni_skb_drop(struct sk_buff *skb)
{
	dev_kfree_skb_any(skb);
}

/*
 * Frames up to VNI_RX_LINEAR_MAX bytes get one linear skb from NAPI's
 * page-fragment cache. Larger ones get a short linear head (the virtio-net
 * header and the packet headers GRO reads) and order-0 pages for the rest:
 * a linear 64 KiB skb is an order-5 allocation, which fails once memory is
 * fragmented. A frame is at most 64 KiB + 64 bytes (the Rust half checks),
 * so the pages fit MAX_SKB_FRAGS.
 */
#define VNI_RX_LINEAR_MAX (SKB_WITH_OVERHEAD(PAGE_SIZE) - NET_SKB_PAD - NET_IP_ALIGN)
#define VNI_RX_HEAD (VNI_VNET_HDR_LEN + 128)

struct sk_buff *vni_rx_alloc(struct vni_priv *p, u32 len)
{
	u32 head = len <= VNI_RX_LINEAR_MAX ? len : VNI_RX_HEAD;
	u32 rest = len - head;
	struct sk_buff *skb = napi_alloc_skb(&p->napi, head);
	int i;

	if (!skb)
		return NULL;
	skb_put(skb, head);
	for (i = 0; rest; i++) {
		u32 n = min_t(u32, rest, PAGE_SIZE);
		struct page *page;

		if (i >= MAX_SKB_FRAGS)
			goto fail;
		page = alloc_page(GFP_ATOMIC | __GFP_NOWARN);
		if (!page)
			goto fail;
		skb_add_rx_frag(skb, i, page, 0, n, PAGE_SIZE);
		rest -= n;
	}
	return skb;
fail:
	kfree_skb(skb);
	return NULL;
}

int vni_rx_store(struct sk_buff *skb, u32 offset, const void *from, u32 len)
{
	return skb_store_bits(skb, offset, from, len);
}

int vni_rx_deliver(struct vni_priv *p, struct sk_buff *skb)
{
	struct virtio_net_hdr h;

	if (skb->len < VNI_VNET_HDR_LEN + ETH_HLEN)
		goto bad;
	memcpy(&h, skb->data, sizeof(h));
	__skb_pull(skb, sizeof(h));
	skb_reset_mac_header(skb);
	/* The header came from another node: the kernel's own checks for
	 * untrusted virtio-net headers (the ones tun and packet use) decide. */
	if (virtio_net_hdr_to_skb(skb, &h, true))
		goto bad;
	skb->protocol = eth_type_trans(skb, p->dev);
	napi_gro_receive(&p->napi, skb);
	return 0;
bad:
	kfree_skb(skb);
	return -EINVAL;
}

void vni_set_link_stats(struct rtnl_link_stats64 *s, u64 rx_packets, u64 rx_bytes,
			u64 rx_dropped, u64 rx_errors, u64 tx_packets, u64 tx_bytes,
			u64 tx_dropped)
{
	s->rx_packets = rx_packets;
	s->rx_bytes = rx_bytes;
	s->rx_dropped = rx_dropped;
	s->rx_errors = rx_errors;
	s->tx_packets = tx_packets;
	s->tx_bytes = tx_bytes;
	s->tx_dropped = tx_dropped;
}

/* Callbacks into the Rust half. */

static netdev_tx_t vni_start_xmit(struct sk_buff *skb, struct net_device *dev)
{
	struct vni_priv *p = netdev_priv(dev);

	return vni_rs_xmit(p->rs, skb) ? NETDEV_TX_BUSY : NETDEV_TX_OK;
}

static int vni_poll(struct napi_struct *napi, int budget)
{
	struct vni_priv *p = container_of(napi, struct vni_priv, napi);

	return vni_rs_poll(p->rs, budget);
}

static enum hrtimer_restart vni_kick(struct hrtimer *t)
{
	struct vni_priv *p = container_of(t, struct vni_priv, kick);

	if (netif_queue_stopped(p->dev))
		netif_wake_queue(p->dev);
	if (netif_running(p->dev))
		napi_schedule(&p->napi);
	return HRTIMER_NORESTART;
}

static void vni_housekeep(struct work_struct *w)
{
	struct vni_priv *p = container_of(to_delayed_work(w), struct vni_priv, housekeeping);
	u32 delay_us = vni_rs_housekeep(p->rs);

	if (!READ_ONCE(p->removing))
		queue_delayed_work(system_dfl_wq, &p->housekeeping, usecs_to_jiffies(delay_us));
}

static irqreturn_t vni_rx_irq(int irq, void *data)
{
	struct vni_priv *p = data;

	napi_schedule(&p->napi);
	return IRQ_HANDLED;
}

static irqreturn_t vni_control_irq(int irq, void *data)
{
	vni_housekeeping_soon(data);
	return IRQ_HANDLED;
}

static int vni_open(struct net_device *dev)
{
	struct vni_priv *p = netdev_priv(dev);

	napi_enable(&p->napi);
	netif_start_queue(dev);
	napi_schedule(&p->napi);
	return 0;
}

static int vni_stop(struct net_device *dev)
{
	struct vni_priv *p = netdev_priv(dev);

	netif_stop_queue(dev);
	hrtimer_cancel(&p->kick);
	napi_disable(&p->napi);
	return 0;
}

static void vni_get_stats64(struct net_device *dev, struct rtnl_link_stats64 *s)
{
	struct vni_priv *p = netdev_priv(dev);

	vni_rs_link_stats(p->rs, s);
}

static const struct net_device_ops vni_netdev_ops = {
	.ndo_open = vni_open,
	.ndo_stop = vni_stop,
	.ndo_start_xmit = vni_start_xmit,
	.ndo_get_stats64 = vni_get_stats64,
	.ndo_set_mac_address = eth_mac_addr,
	.ndo_validate_addr = eth_validate_addr,
};

static void vni_get_drvinfo(struct net_device *dev, struct ethtool_drvinfo *info)
{
	struct vni_priv *p = netdev_priv(dev);

	strscpy(info->driver, KBUILD_MODNAME, sizeof(info->driver));
	strscpy(info->bus_info, pci_name(p->pdev), sizeof(info->bus_info));
}

static int vni_get_sset_count(struct net_device *dev, int sset)
{
	return sset == ETH_SS_STATS ? vni_rs_stat_count() : -EOPNOTSUPP;
}

static void vni_get_strings(struct net_device *dev, u32 sset, u8 *data)
{
	u32 i;

	if (sset != ETH_SS_STATS)
		return;
	for (i = 0; i < vni_rs_stat_count(); i++)
		ethtool_puts(&data, vni_rs_stat_name(i));
}

static void vni_get_ethtool_stats(struct net_device *dev, struct ethtool_stats *stats, u64 *data)
{
	struct vni_priv *p = netdev_priv(dev);

	vni_rs_stat_values(p->rs, data, vni_rs_stat_count());
}

static const struct ethtool_ops vni_ethtool_ops = {
	.get_drvinfo = vni_get_drvinfo,
	.get_link = ethtool_op_get_link,
	.get_sset_count = vni_get_sset_count,
	.get_strings = vni_get_strings,
	.get_ethtool_stats = vni_get_ethtool_stats,
};

/*
 * Undoes what probe set up around the Rust half, when the device goes away
 * or a later probe step fails. devres runs it after unregistering the
 * net_device and freeing the interrupts (the reverse of probe's order), and
 * before the maps and the net_device go: the work and the timer stop, then
 * the Rust half leaves the region and is freed.
 */
static void vni_release(void *data)
{
	struct vni_priv *p = data;

	WRITE_ONCE(p->removing, true);
	cancel_delayed_work_sync(&p->housekeeping);
	hrtimer_cancel(&p->kick);
	netif_napi_del(&p->napi);
	vni_rs_free(p->rs);
}

/*
 * Every resource is device-managed (devm_, pcim_): a failing step returns,
 * and devres undoes the earlier ones in reverse, as it does when the
 * device goes away; there is no unwind ladder and no remove callback.
 */
static int vni_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *d = &pdev->dev;
	struct net_device *dev;
	struct vni_priv *p;
	u8 addr[ETH_ALEN];
	int err;

	/* A lab in write-protected sections has more ivshmem devices (the
	 * directory and the sections: ivshmem-plain, no MSI-X); the VNI is
	 * the doorbell device's, the one with MSI-X. */
	if (!pdev->msix_cap)
		return -ENODEV;
	if (node < 0 || !mac || !mac_pton(mac, addr) || !is_valid_ether_addr(addr))
		return dev_err_probe(d, -EINVAL,
				     "module parameters node=ID and mac=MAC (a unicast address) are required\n");
	/* First, so that it is freed last. */
	dev = devm_alloc_etherdev(d, sizeof(*p));
	if (!dev)
		return -ENOMEM;
	SET_NETDEV_DEV(dev, d);
	p = netdev_priv(dev);
	p->dev = dev;
	p->pdev = pdev;
	spin_lock_init(&p->lock);
	INIT_DELAYED_WORK(&p->housekeeping, vni_housekeep);
	hrtimer_setup(&p->kick, vni_kick, CLOCK_MONOTONIC, HRTIMER_MODE_REL_SOFT);

	err = pcim_enable_device(pdev);
	if (err)
		return err;
	/* Without bus mastering the device's MSI-X writes are dropped: every
	 * doorbell would be lost. */
	pci_set_master(pdev);
	p->regs = pcim_iomap_region(pdev, VNI_BAR_REGS, KBUILD_MODNAME);
	if (IS_ERR(p->regs))
		return dev_err_probe(d, PTR_ERR(p->regs), "cannot map BAR0\n");
	/* BAR2 is the region, RAM on the host: mapped write-back, as memory,
	 * so that atomics and copies run at memory speed. */
	err = pcim_request_region(pdev, VNI_BAR_SHM, KBUILD_MODNAME);
	if (err)
		return dev_err_probe(d, err, "cannot claim BAR2\n");
	p->shm = devm_memremap(d, pci_resource_start(pdev, VNI_BAR_SHM),
			       pci_resource_len(pdev, VNI_BAR_SHM), MEMREMAP_WB);
	if (IS_ERR(p->shm))
		return dev_err_probe(d, PTR_ERR(p->shm), "cannot map BAR2\n");
	err = pci_alloc_irq_vectors(pdev, VNI_VECTORS, VNI_VECTORS, PCI_IRQ_MSIX);
	if (err < 0)
		return dev_err_probe(d, err,
				     "the device has no %d MSI-X vectors (ivshmem-doorbell with vectors=%d)\n",
				     VNI_VECTORS, VNI_VECTORS);

	p->rs = vni_rs_new(p, node, addr, notification, busy_poll_us, p->shm,
			   pci_resource_len(pdev, VNI_BAR_SHM),
			   ioread32(p->regs + IVSHMEM_IVPOSITION));
	if (!p->rs)
		return -EINVAL;
	netif_napi_add(dev, &p->napi, vni_poll);
	err = devm_add_action_or_reset(d, vni_release, p);
	if (err)
		return err;

	dev->netdev_ops = &vni_netdev_ops;
	dev->ethtool_ops = &vni_ethtool_ops;
	eth_hw_addr_set(dev, addr);
	strscpy(dev->name, ifname, sizeof(dev->name));
	dev->min_mtu = ETH_MIN_MTU;
	dev->max_mtu = vni_rs_max_mtu();
	dev->mtu = clamp_t(unsigned int, mtu, dev->min_mtu, dev->max_mtu);
	/* Frames carry a virtio-net header, so checksums and segmentation
	 * cross as they do over tun: a 64 KiB TCP segment is one frame. */
	dev->hw_features = NETIF_F_SG | NETIF_F_HW_CSUM | NETIF_F_TSO | NETIF_F_TSO6 |
			   NETIF_F_TSO_ECN | NETIF_F_FRAGLIST | NETIF_F_HIGHDMA;
	dev->features = dev->hw_features | NETIF_F_RXCSUM;
	netif_set_tso_max_size(dev, vni_rs_max_gso());
	netif_carrier_off(dev);

	err = devm_request_irq(d, pci_irq_vector(pdev, VNI_RX_VECTOR), vni_rx_irq, 0, "vni-rx", p);
	if (err)
		return err;
	err = devm_request_irq(d, pci_irq_vector(pdev, VNI_CONTROL_VECTOR), vni_control_irq, 0,
			       "vni-control", p);
	if (err)
		return err;
	err = devm_register_netdev(d, dev);
	if (err)
		return err;
	queue_delayed_work(system_dfl_wq, &p->housekeeping, 0);
	return 0;
}

static const struct pci_device_id vni_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) }, /* ivshmem */
	{ }
};
MODULE_DEVICE_TABLE(pci, vni_ids);

static struct pci_driver vni_pci_driver = {
	.name = KBUILD_MODNAME,
	.id_table = vni_ids,
	.probe = vni_probe,
};

int vni_glue_init(void)
{
	return pci_register_driver(&vni_pci_driver);
}

void vni_glue_exit(void)
{
	pci_unregister_driver(&vni_pci_driver);
}
