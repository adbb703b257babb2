"""The rtnetlink wire constants and message layouts shared by the lean netlink code: requests
(``nlsend``), dumps and event decoding (``nldump``) and the kernel monitor (``monitor``). Values
from the kernel's uapi headers (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h)."""

from __future__ import annotations

import struct

# message types
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

# header flags
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

# attributes
IFLA_IFNAME = 3
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2

# values
AF_BRIDGE = 7
RT_TABLE_MAIN, RT_SCOPE_UNIVERSE, RTN_UNSPEC, RTN_UNICAST = 254, 0, 0, 1
NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x20, 0x40, 0x80
NTF_SELF = 0x02

# layouts: nlmsghdr, rtattr, rtmsg, ndmsg, ifinfomsg
HDR = struct.Struct("=IHHII")
ATTR = struct.Struct("=HH")
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BBHiHBB")
IFINFO = struct.Struct("=BxHiII")
