// QMP `transaction`: several block actions applied at one instant, with typed actions (transaction.json).
import type { ExecuteOptions, QmpExecutor } from './client.js';
import type { BlockDirtyBitmapAddArgs, BlockDirtyBitmapArgs, BlockDirtyBitmapMergeArgs, BlockdevBackupArgs } from './types.js';

export type TransactionAction =
  | { type: 'abort'; data: Record<string, never> }
  | { type: 'block-dirty-bitmap-add'; data: BlockDirtyBitmapAddArgs }
  | { type: 'block-dirty-bitmap-remove'; data: BlockDirtyBitmapArgs }
  | { type: 'block-dirty-bitmap-enable'; data: BlockDirtyBitmapArgs }
  | { type: 'block-dirty-bitmap-disable'; data: BlockDirtyBitmapArgs }
  | { type: 'block-dirty-bitmap-clear'; data: BlockDirtyBitmapArgs }
  | { type: 'block-dirty-bitmap-merge'; data: BlockDirtyBitmapMergeArgs }
  | { type: 'blockdev-backup'; data: BlockdevBackupArgs };

export interface TransactionProperties {
  /** 'grouped' makes the jobs started by the transaction fail together. */
  'completion-mode'?: 'individual' | 'grouped';
}

/** Builders, so call sites read `actions.bitmapDisable({node, name})` instead of spelling the union. */
export const actions = {
  abort: (): TransactionAction => ({ type: 'abort', data: {} }),
  bitmapAdd: (data: BlockDirtyBitmapAddArgs): TransactionAction => ({ type: 'block-dirty-bitmap-add', data }),
  bitmapRemove: (data: BlockDirtyBitmapArgs): TransactionAction => ({ type: 'block-dirty-bitmap-remove', data }),
  bitmapEnable: (data: BlockDirtyBitmapArgs): TransactionAction => ({ type: 'block-dirty-bitmap-enable', data }),
  bitmapDisable: (data: BlockDirtyBitmapArgs): TransactionAction => ({ type: 'block-dirty-bitmap-disable', data }),
  bitmapClear: (data: BlockDirtyBitmapArgs): TransactionAction => ({ type: 'block-dirty-bitmap-clear', data }),
  bitmapMerge: (data: BlockDirtyBitmapMergeArgs): TransactionAction => ({ type: 'block-dirty-bitmap-merge', data }),
  blockdevBackup: (data: BlockdevBackupArgs): TransactionAction => ({ type: 'blockdev-backup', data }),
};

/**
 * Applies all `list` or none: QEMU prepares every action, and if one fails it aborts the others
 * and answers with that action's error. An empty list is refused here (QEMU would accept it and do nothing).
 */
export async function transaction(
  qmp: QmpExecutor,
  list: TransactionAction[],
  properties?: TransactionProperties,
  opts?: ExecuteOptions,
): Promise<void> {
  if (list.length === 0) throw new RangeError('transaction: no actions given');
  const args: Record<string, unknown> = { actions: list };
  if (properties) args.properties = properties;
  await qmp.execute('transaction', args, opts);
}
