"""The PXE server: the dnsmasq configuration for DHCP/proxyDHCP and TFTP (dnsmasq), and
running dnsmasq supervised beside the HTTP server (server)."""
