// proofcheck verifies an ABCI query proof with CometBFT's own proof runtime.
//
// Input on stdin (JSON): {"proof_ops": [{"type","key","data"} base64 fields], "app_hash": hex,
// "keypath": "/store/x:hex", "value": base64}. Exit 0 when the proof verifies, 1 otherwise.
package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"

	"github.com/cometbft/cometbft/crypto/merkle"
	cmtcrypto "github.com/cometbft/cometbft/proto/tendermint/crypto"
)

type op struct {
	Type string `json:"type"`
	Key  []byte `json:"key"`
	Data []byte `json:"data"`
}

type input struct {
	ProofOps []op  `json:"proof_ops"`
	AppHash  string `json:"app_hash"`
	KeyPath  string `json:"keypath"`
	Value    []byte `json:"value"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	root, err := hex.DecodeString(in.AppHash)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad app hash:", err)
		os.Exit(2)
	}
	ops := &cmtcrypto.ProofOps{}
	for _, o := range in.ProofOps {
		ops.Ops = append(ops.Ops, cmtcrypto.ProofOp{Type: o.Type, Key: o.Key, Data: o.Data})
	}
	if err := merkle.DefaultProofRuntime().VerifyValue(ops, root, in.KeyPath, in.Value); err != nil {
		fmt.Println("INVALID:", err)
		os.Exit(1)
	}
	fmt.Println("OK")
}
