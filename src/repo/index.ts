// The repository room: chains of qcow2 images and manifests per domain and consumer, and the
// operations on them that need no QEMU process of the domain (list, verify, restore, prune).
export {
  Repository, LOCK_FILE, INPROGRESS_FILE, PRUNE_JOURNAL, type ChainState, type DomainState, type InProgress, type PruneJournal, type RepoLock, type RepoProblem,
} from './repository.js';
export { PLAIN_NAME, imageName, imageOwner, inChain, manifestName, pointId, pointSeq } from './names.js';
export {
  CREATE_EXCLUSIVE, MANIFEST_FORMAT, fsyncDir, fsyncFile, newDigestInfo, manifestProblem, readManifest, readRepoFile, writeFileDurable, writeManifest,
  type BackupDisk, type ChainRef, type Manifest,
} from './manifest.js';
export { DIGEST_ALGORITHM, DIGEST_SEGMENT, ExtentDigest, hashingThreadId } from './digest.js';
export { serveChain, killStaleQemuNbd, makeRunDir, sweepStaleRunDirs } from './image-server.js';
export { abortPrune, pruneChain, PRUNE_STEPS, type PruneOptions, type PruneResult, type PruneStep } from './prune.js';
export { partName, restoreDisk, restorePointImage, sweepRestoreLeftovers, type RestoreOptions, type RestoreResult } from './restore.js';
export { verifyRepo, verifyManifest, type DiskVerdict, type VerifyReport } from './verify.js';
export { chainDamage, chainSpec, checkDiskChain, diskChain, type ChainCheckOptions, type ChainProblem } from './chain.js';
