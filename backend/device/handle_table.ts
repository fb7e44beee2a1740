/**
 * Per-guest tables of verbs objects: handles, and doorbell queue ids.
 *
 * @module
 */

import { Errno, FIXED_QUEUES } from "../../protocol/device_interface.ts";
import { CommandError, type Fields, intField, invalid } from "./fields.ts";
import type { ObjectBase, QueueOwner } from "./objects.ts";

/** Largest handle: handles travel as u32. */
const MAX_HANDLE = 0xffff_ffff;

/**
 * One kind of object of one guest, by handle. Handles count up from 1 and
 * are never reused, so a stale handle never names a newer object.
 *
 * @example
 * ```ts
 * import { HandleTable } from "./handle_table.ts";
 * const pds = new HandleTable<{ handle: number; live: boolean; guest: never }>("pd");
 * const a = pds.add((handle) => ({ handle, live: true, guest: undefined as never }));
 * pds.remove(a);
 * const b = pds.add((handle) => ({ handle, live: true, guest: undefined as never }));
 * if (a.handle !== 1 || b.handle !== 2 || pds.get(1) !== undefined) throw new Error("reused");
 * ```
 */
export class HandleTable<T extends ObjectBase> {
  /** The field name commands use for this kind ("pd", "cq", ...). */
  readonly kind: string;
  readonly #objects = new Map<number, T>();
  #next = 1;

  /** An empty table for objects named `kind` in commands and messages. */
  constructor(kind: string) {
    this.kind = kind;
  }

  /** Live objects. */
  get size(): number {
    return this.#objects.size;
  }

  /** Throws ENOMEM unless fewer than `limit` objects are live (and handles remain). */
  checkRoom(limit: number): void {
    if (this.#objects.size >= limit) {
      throw new CommandError(Errno.ENOMEM, `${this.kind} limit reached: ${limit} live`);
    }
    if (this.#next > MAX_HANDLE) {
      throw new CommandError(Errno.ENOMEM, `${this.kind} handles exhausted`);
    }
  }

  /** Builds the object with the next handle and keeps it. `build` must not throw. */
  add(build: (handle: number) => T): T {
    const object = build(this.#next++);
    this.#objects.set(object.handle, object);
    return object;
  }

  /** The live object with `handle`. */
  get(handle: number): T | undefined {
    return this.#objects.get(handle);
  }

  /**
   * Reads the handle field `name` (default: the kind) of `req` and returns
   * its object, or throws EINVAL: handles of other guests are simply unknown.
   */
  find(req: Fields, name: string = this.kind): T {
    const handle = intField(req, name, { max: MAX_HANDLE });
    const object = this.#objects.get(handle);
    if (object === undefined) throw invalid(`${name} ${handle} does not exist`);
    return object;
  }

  /** Forgets the object and marks it dead. */
  remove(object: T): void {
    this.#objects.delete(object.handle);
    object.live = false;
  }

  /** The live objects, oldest first. */
  values(): T[] {
    return [...this.#objects.values()];
  }
}

/**
 * Doorbell queue ids of one guest: 0 and 1 are the fixed queues, created
 * queues get ids from 2 up to `limit - 1`. Ids are reused (the doorbell
 * bitmap is finite) but next-fit, so a just-freed id comes back last.
 */
export class QueueTable {
  readonly #limit: number;
  readonly #owners = new Map<number, QueueOwner | null>();
  #next = FIXED_QUEUES;

  /** Ids below `limit` (at most 65536). */
  constructor(limit: number) {
    if (!Number.isInteger(limit) || limit <= FIXED_QUEUES || limit > 0x1_0000) {
      throw new RangeError(`queue id limit ${limit} is not in ${FIXED_QUEUES + 1}..65536`);
    }
    this.#limit = limit;
  }

  /** Ids still free. */
  get free(): number {
    return this.#limit - FIXED_QUEUES - this.#owners.size;
  }

  /** Ids in use. */
  get used(): number {
    return this.#owners.size;
  }

  /** Throws ENOMEM unless `n` ids are free. */
  checkRoom(n: number): void {
    if (this.free < n) {
      throw new CommandError(
        Errno.ENOMEM,
        `no doorbell queue ids left (${n} needed, ${this.free} free of ${
          this.#limit - FIXED_QUEUES
        })`,
      );
    }
  }

  /** Takes a free id; call {@linkcode QueueTable.checkRoom} first. */
  alloc(): number {
    if (this.free === 0) throw new Error("QueueTable.alloc without a free id"); // a model bug
    for (;;) {
      const id = this.#next;
      this.#next = id + 1 >= this.#limit ? FIXED_QUEUES : id + 1;
      if (!this.#owners.has(id)) {
        this.#owners.set(id, null);
        return id;
      }
    }
  }

  /** Records what an allocated id belongs to. */
  bind(id: number, owner: QueueOwner): void {
    this.#owners.set(id, owner);
  }

  /** Frees an id. */
  release(id: number): void {
    this.#owners.delete(id);
  }

  /** What the id belongs to, or undefined. */
  owner(id: number): QueueOwner | undefined {
    return this.#owners.get(id) ?? undefined;
  }
}
