#!/usr/bin/python3
"""A real RTSP server for integration tests: GStreamer's gst-rtsp-server serving live H.264.

Run with the *system* Python (`/usr/bin/python3`), where python3-gi and the GstRtspServer
typelib live; the project's own Python does not have them. Tests start it as a subprocess on a
free port, wait for the line "READY" on stdout, and kill it (SIGTERM/SIGKILL) to simulate a
camera that goes away.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --path /cam --width 320 --height 240 \
        [--user admin --password secret]
"""

from __future__ import annotations

import argparse
import signal
import sys


def build_server(port: int, path: str, width: int, height: int, fps: int,
                 user: str | None, password: str | None):  # type: ignore[no-untyped-def]
    """Create (not yet attached) an RTSPServer serving a live test pattern at `path`.

    With `user`/`password` the server demands HTTP Basic auth: an RTSPAuth with one token whose
    role is granted access and construct permissions on the media factory; anyone else gets 401.
    """
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        f"! rtph264pay name=pay0 pt=96 )")
    factory.set_shared(True)
    if user is not None:
        role = "user"
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, role)
        basic = GstRtspServer.RTSPAuth.make_basic(user, password or "")
        auth.add_basic(basic, token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(role, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        permissions.add_permission_for_role(role, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(path, factory)
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a live H.264 test pattern over RTSP (tests only).")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/cam", help="mount path, starting with '/'")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args(argv)
    if not args.path.startswith("/"):
        ap.error("--path must start with '/'")

    from gi.repository import GLib

    server = build_server(args.port, args.path, args.width, args.height, args.fps, args.user, args.password)
    if server.attach(None) == 0:
        print(f"ERROR: cannot listen on port {args.port}", flush=True)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print("READY", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
