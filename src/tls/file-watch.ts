// Calls back, once things have settled, when any of a set of files changes: how certificates and
// keys on disk are followed (the sidecar's identity, the injector's serving certificate), whether
// they are rewritten in place, renamed over, or swapped by the kubelet's `..data` symlink.

import fs from 'node:fs';
import path from 'node:path';

/** Quiet time after a file event before calling back, so files written one after another are read as one set. */
export const RELOAD_DEBOUNCE_MS = 100;
/** Stat polling interval; catches the atomic renames and k8s `..data` symlink swaps that fs.watch can miss. */
export const POLL_INTERVAL_MS = 1_000;

export class FileWatch {
  private directoryWatchers: fs.FSWatcher[] = [];
  private readonly polledFiles: string[] = [];
  private timer: NodeJS.Timeout | undefined;
  private watching = true;

  /** Starts watching at once. Keeps nothing alive by itself. */
  constructor(files: readonly string[], private readonly onChange: () => void) {
    const resolved = [...new Set(files.map((file) => path.resolve(file)))];
    // The directories, not the files: a file watch follows the inode, which an atomic rename or a
    // symlink swap replaces, after which it never fires again.
    for (const directory of new Set(resolved.map((file) => path.dirname(file)))) {
      try {
        const watcher = fs.watch(directory, { persistent: false }, () => this.schedule());
        // A directory that is itself replaced errors the watcher; polling still covers it.
        watcher.on('error', () => watcher.close());
        this.directoryWatchers.push(watcher);
      } catch {
        // Missing directory or no inotify slots: polling alone will have to do.
      }
    }
    for (const file of resolved) {
      fs.watchFile(file, { persistent: false, interval: POLL_INTERVAL_MS }, this.onPolledChange);
      this.polledFiles.push(file);
    }
  }

  close(): void {
    this.watching = false;
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const watcher of this.directoryWatchers.splice(0)) watcher.close();
    for (const file of this.polledFiles.splice(0)) fs.unwatchFile(file, this.onPolledChange);
  }

  private readonly onPolledChange = (current: fs.Stats, previous: fs.Stats): void => {
    if (current.mtimeMs !== previous.mtimeMs || current.ino !== previous.ino || current.size !== previous.size) this.schedule();
  };

  private schedule(): void {
    if (!this.watching) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.watching) this.onChange();
    }, RELOAD_DEBOUNCE_MS);
    this.timer.unref();
  }
}
